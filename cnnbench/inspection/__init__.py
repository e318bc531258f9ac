"""``cnnbench inspect``: look inside a trained network -- its activations stage by stage, its first
convolution's filters and where it looks (Grad-CAM) -- as PNGs, TensorBoard images and one HTML page.

``probe`` runs the network and reads it (forward hooks, Grad-CAM through captum); ``pictures`` draws
(Pillow, matplotlib's colour maps); ``page`` writes the self-contained HTML page; ``command`` is the
subcommand that chooses the images and writes everything.
"""
