"""simsiam-job: the launcher for SimSiam jobs (Kubernetes, Slurm, this machine)."""

__version__ = "0.1.0"
