# The real engines the cluster tests start.
from tests.tasks.cluster.ray_cluster import ray  # noqa: F401
from tests.tasks.cluster.slurm_cluster import slurm  # noqa: F401
