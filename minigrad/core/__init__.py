"""The autodiff core: the Tensor and its one entry point ``apply`` (tensor.py), the tape and
its reverse walk (autograd.py), and the one primitive table (ops.py)."""
