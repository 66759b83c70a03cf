from tests.tasks.cluster.slurm_cluster import slurm  # noqa: F401 -- the real Slurm the cluster tests start
