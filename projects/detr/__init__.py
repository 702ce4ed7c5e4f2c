"""DETR (Carion et al., 2020) on detr_ext: modeling, configs and checkpoint converters."""
