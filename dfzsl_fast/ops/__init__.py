"""Op schemas, routing, autograd and the public wrappers (`dfzsl_fast.sample_vmf`, ...)."""
