"""Backends: one module each. Names usable as ``backend="..."`` map to their classes here."""

BACKENDS = {
    "local": "airflow_spot_training.backends.local.LocalBackend",
    "ec2": "airflow_spot_training.backends.ec2.EC2SpotBackend",
    "sagemaker": "airflow_spot_training.backends.sagemaker.SageMakerSpotBackend",
    "compute_engine": "airflow_spot_training.backends.compute_engine.ComputeEngineSpotBackend",
    "vertex_ai": "airflow_spot_training.backends.vertex_ai.VertexAISpotBackend",
}
