"""Autograd formulas shared by the dispatcher ops (dfzsl_fast/ops) and the Triton custom ops
(dfzsl_fast/triton): below both, so neither imports the other."""
