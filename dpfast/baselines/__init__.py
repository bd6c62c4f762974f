"""Other people's samplers, driven with dpfast's networks, for side-by-side comparisons."""
