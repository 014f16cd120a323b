"""`mmdlrm tune`: a validation-driven search over config overrides (space, study, outputs)."""
