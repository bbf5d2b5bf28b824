"""Score-distillation losses as pure functions of renders, cameras and frozen prior params."""
