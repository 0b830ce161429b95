"""Whole models built from the layers: TorchRec's DLRM, DLRM_DCN and DLRM_Projection, and
DLRM_Baseline (no interaction)."""
