"""ClArC: isolate the artifact behind a flagged cluster, correct the model, and prove the correction.

Pipeline (docs/clarc.md): cluster members (cluster.py) -> the layer, chosen among the feature maps
(layer_choice.py) -> CAV (a direction or a subspace) at the layer (cav.py) -> masks and patch by LRP
along the CAV (localize.py), together the artifact model (artifact.py) -> a correction: P-ClArC
(projective.py), A-ClArC (augmentive.py; the artifact as a transformation: transform.py) or RR-ClArC
(rrclarc.py), or a group-robust correction on spray's inferred groups (groups.py): DFR (dfr.py) or GroupDRO
(groupdro.py); the fine-tuning ones through one loop (finetune.py); auto.py chooses one per case ->
evaluation (evaluate.py, TCAV at another layer: tcav.py) -> verification (verify.py: the flagged class audited
again with the corrected model); run.py goes from an audit store to a recorded result.
"""

from __future__ import annotations

from spray.clarc.activations import default_layer
from spray.clarc.artifact import ArtifactModel, isolate_artifact
from spray.clarc.augmentive import AClArC
from spray.clarc.cav import CAV
from spray.clarc.cluster import ClusterSpec, read_cluster
from spray.clarc.dfr import DFR
from spray.clarc.groupdro import GroupDRO
from spray.clarc.evaluate import FdaSetup, evaluate_correction, evaluate_model, format_metrics
from spray.clarc.finetune import FinetuneResult, finetune
from spray.clarc.layer_choice import LayerChoice, choose_layer
from spray.clarc.localize import Localization, localize, paste
from spray.clarc.projective import (
    Projected,
    Projection,
    insert_projection,
    load_corrected,
    project_model,
    remove_projection,
)
from spray.clarc.rrclarc import RRClArC, rr_penalty
from spray.clarc.tcav import Tcav, tcav, tcav_layer
from spray.clarc.verify import Standing, Verification, verify_correction
from spray.clarc.run import (
    CORRECTIONS,
    METHODS,
    ClarcConfig,
    ClarcResult,
    Correction,
    EvaluationData,
    Tuning,
    clarc_from_store,
    evaluate_from_store,
    run_name,
)

__all__ = [
    "CORRECTIONS",
    "METHODS",
    "Correction",
    "Tuning",
    "AClArC",
    "ArtifactModel",
    "CAV",
    "DFR",
    "GroupDRO",
    "ClarcConfig",
    "ClarcResult",
    "ClusterSpec",
    "EvaluationData",
    "FdaSetup",
    "FinetuneResult",
    "LayerChoice",
    "Localization",
    "Projected",
    "Projection",
    "RRClArC",
    "Standing",
    "Tcav",
    "Verification",
    "choose_layer",
    "clarc_from_store",
    "default_layer",
    "evaluate_correction",
    "evaluate_from_store",
    "evaluate_model",
    "finetune",
    "format_metrics",
    "insert_projection",
    "isolate_artifact",
    "load_corrected",
    "localize",
    "paste",
    "project_model",
    "read_cluster",
    "remove_projection",
    "rr_penalty",
    "run_name",
    "tcav",
    "tcav_layer",
    "verify_correction",
]
