"""Gating policy: exit criteria (gates), the learned gate, threshold calibration, exit-model training.

See :mod:`policies.gating.gates` (the gate interface, cascades, gated execution),
:mod:`policies.gating.calibrate` (conservative threshold calibration; its bounds and exact tests in
:mod:`policies.gating.bounds`, the window certificate in :mod:`policies.gating.window`) and
:mod:`policies.gating.train` (BranchyNet joint or frozen-backbone training, cached) and
:mod:`policies.gating.token_exit` (exit heads, gates and calibration for generated tokens).
"""
from .calibrate import (BOUNDS, RISKS, SEQUENCES, Calibration, CalibrationError, CalibrationWarning, budget_for_ratio,
                        calibrate_cascade, calibrate_exits, calibrate_threshold, cascade_route, exit_losses,
                        lower_bound, min_samples, net_p_value, net_union_bound, net_upper_bound,
                        upper_bound, window_budget, window_levels, window_test)
from .gates import (Cascade, EntropyGate, Gate, GatedOutput, GatingError, LearnedGate, MaxSoftmaxGate,
                    OracleGate, PatienceGate, available_gates, decision_inputs, gate_flops, make_gate, pool_hidden,
                    run_gated, softmax_stats)
from .decoder import DecoderExits, attach_exits
from .train import EXIT_MODELS, TrainConfig, evaluate_exits, exit_model, fit_exits, load_or_train, train_exit_model
from .token_exit import TokenExitConfig, TokenExits, load_or_train_token_exits, train_token_exits

__all__ = ["Gate", "MaxSoftmaxGate", "EntropyGate", "PatienceGate", "LearnedGate", "OracleGate", "Cascade",
           "GatedOutput", "GatingError", "available_gates", "make_gate", "pool_hidden", "softmax_stats",
           "run_gated", "gate_flops", "Calibration", "CalibrationError", "BOUNDS", "RISKS", "SEQUENCES", "upper_bound",
           "budget_for_ratio", "exit_losses", "calibrate_threshold", "calibrate_cascade", "cascade_route",
           "calibrate_exits", "CalibrationWarning", "lower_bound", "net_p_value", "net_union_bound", "net_upper_bound", "min_samples",
           "window_test", "window_budget", "window_levels", "decision_inputs",
           "TrainConfig", "train_exit_model", "load_or_train", "fit_exits", "exit_model", "EXIT_MODELS", "evaluate_exits", "DecoderExits", "attach_exits",
           "TokenExitConfig", "TokenExits", "train_token_exits", "load_or_train_token_exits"]
