"""distid's benchmarks (`python -m distid.experiments.bench`): projection kernels against the copy bandwidth
(kernels.py), training step ratios (steps.py), hand ring against the backend's all-reduce with an
α–β fit (collectives.py), and the α–β MODEL projected to 8…4,096 GPUs (scaling.py)."""
