"""Whole models built from the layers: TorchRec's DLRM, DLRM_DCN, DLRM_Projection,
DLRM_Transformer and SimpleDeepFMNN (DeepFM), and DLRM_Baseline (no interaction)."""
