"""What tests share, one module per kind of thing it holds; tests import from here, never from
another test module (a test module holds tests and its own private helpers only).

Imported as ``helpers.<module>``: pyproject.toml puts tests/ on pytest's pythonpath. Shared
fixtures live in conftest.py files instead. Scripts that tests run in another process (workers,
the pods' hooks) stay beside the tests that run them.

- paths.py: the repository, the venv's commands, the small CPU config
- prereqs.py: skip (or fail under SIMSIAM_REQUIRE_ALL=1) when a prerequisite is absent
- cli.py: ``simsiam-job`` run as a user runs it, and what a user must see
- files.py: what another user of the machine can read; which files hold a value
- localruns.py: real local-backend runs and their processes (group restart, supervision, resume)
- trainer.py: ``simsiam-train`` runs and tiny image folders (trainer and fault tests)
- twonodes.py: a two-"node" paddle run on this machine (fault tests)
- slurm.py: the two-node Slurm test cluster
- k8s.py: job specs and names of the Kubernetes tests (render and cluster alike)
- k8s_control_plane.py: the CLI against the kwok control plane
- k8s_nodes.py: jobs on the test cluster's two real nodes
"""
