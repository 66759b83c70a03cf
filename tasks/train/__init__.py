"""Train: the launcher (tasks.train.launch) and the training process (tasks.train.process) of one run."""
