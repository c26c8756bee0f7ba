"""OpenLineage datasets of a finished training: what it read and the model it wrote.

Needs the OpenLineage provider (extra ``openlineage``); the operator's
``get_openlineage_facets_on_complete`` calls :func:`operator_lineage`, which the provider's
listener invokes after the task succeeded.

* inputs: the backend's input data (SageMaker's ``input_data_config`` channels), the warm-start
  checkpoint, and the ``Asset`` inlets;
* outputs: the model (``model_uri``) and the ``Asset`` outlets.

Dataset names follow OpenLineage's naming: ``s3://bucket`` / ``gs://bucket`` namespaces with the
key as the name, ``file`` for a local path.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

LOCAL_NAMESPACE = "file"


def dataset_of(uri: str) -> Any:
    """An OpenLineage ``Dataset`` for a URI or a local path."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    scheme, sep, rest = uri.partition("://")
    if not sep:
        return Dataset(namespace=LOCAL_NAMESPACE, name=uri.rstrip("/") or "/")
    if scheme in ("file", "local"):
        return Dataset(namespace=LOCAL_NAMESPACE, name="/" + rest.lstrip("/").rstrip("/"))
    bucket, _, key = rest.partition("/")
    return Dataset(namespace=f"{scheme}://{bucket}", name=key.rstrip("/") or "/")


def _asset_datasets(assets: Iterable[Any]) -> list[Any]:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.sdk import Asset

    out = []
    for asset in assets or ():
        if isinstance(asset, Asset):
            out.append(dataset_of(asset.uri) if "://" in asset.uri else Dataset(namespace="airflow", name=asset.uri))
    return out


def operator_lineage(summary: Mapping[str, Any] | None, input_uris: Iterable[str], inlets: Iterable[Any],
                     outlets: Iterable[Any]) -> Any:
    """The ``OperatorLineage`` of a succeeded training (``summary`` is its return value)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    summary = summary or {}
    inputs = [dataset_of(uri) for uri in input_uris]
    if summary.get("init_uri"):
        inputs.append(dataset_of(summary["init_uri"]))
    outputs = [dataset_of(summary["model_uri"])] if summary.get("model_uri") else []
    return OperatorLineage(inputs=_unique(inputs + _asset_datasets(inlets)),
                           outputs=_unique(outputs + _asset_datasets(outlets)))


def _unique(datasets: list[Any]) -> list[Any]:
    seen, out = set(), []
    for dataset in datasets:
        key = (dataset.namespace, dataset.name)
        if key not in seen:
            seen.add(key)
            out.append(dataset)
    return out
