"""The executors other than this machine: each hands a run to an engine that schedules it (Slurm, Ray,
Kubernetes), and the run trains there by the same rules as a local one (tasks.train.launch)."""
