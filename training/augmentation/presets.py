"""Named augmentation presets for ``augment.preset`` in a recipe: upstream AdaInf's four augmentation
files (seeds.md 4.2). A preset's fields are applied first, so every augment field a recipe or ``--set``
names explicitly wins (:func:`training.config.load_recipe`)."""
from __future__ import annotations

# Upstream values (seeds.md 4.2). Colour-jitter strengths are torchvision's ColorJitter arguments; blur
# sigma U[0.1, 2]; the asymmetric presets solarize only the second view (augment.view2).
AUGMENT_PRESETS: dict = {
    "symmetric": {"scale": [0.08, 1.0], "flip_p": 0.5, "jitter_p": 0.8, "brightness": 0.8, "contrast": 0.8,
                  "saturation": 0.8, "hue": 0.2, "grayscale_p": 0.2, "blur_p": 0.5, "blur_sigma": [0.1, 2.0],
                  "solarize_p": 0.0, "view2": None},
    "symmetric_adainf": {"scale": [0.2, 1.0], "flip_p": 0.5, "jitter_p": 0.4, "brightness": 0.4, "contrast": 0.4,
                         "saturation": 0.4, "hue": 0.1, "grayscale_p": 0.2, "blur_p": 0.5, "blur_sigma": [0.1, 2.0],
                         "solarize_p": 0.0, "view2": None},
    "asymmetric": {"scale": [0.08, 1.0], "flip_p": 0.5, "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4,
                   "saturation": 0.2, "hue": 0.1, "grayscale_p": 0.2, "blur_p": 0.0, "blur_sigma": [0.1, 2.0],
                   "solarize_p": 0.0, "view2": {"solarize_p": 0.2}},
    "asymmetric_adainf": {"scale": [0.2, 1.0], "flip_p": 0.5, "jitter_p": 0.4, "brightness": 0.4, "contrast": 0.4,
                          "saturation": 0.2, "hue": 0.1, "grayscale_p": 0.2, "blur_p": 0.0, "blur_sigma": [0.1, 2.0],
                          "solarize_p": 0.0, "view2": {"solarize_p": 0.2}},
}
