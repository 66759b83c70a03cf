"""Track: every logged step to Parquet (curves), MLflow as a view of it, and the sweep's tables (collect)."""
