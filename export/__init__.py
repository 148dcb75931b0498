"""lmroute.export: offline pipeline (data, training, export, calibration, evaluation)."""
