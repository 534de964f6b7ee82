"""FG-CAM workbench: fine-grained CAM explanations and the LRP family on one engine."""
