"""ILSVRC2012 (ImageNet-1k) archives -> an ImageFolder tree: ``nas-cli prep-imagenet``.

``prepare.prepare(Options(src=..., dst=...))`` does the work; ``labels`` reads the
validation labels (devkit or the shipped ``val_labels.csv.gz``); ``archives`` reads tar
members safely by offset; ``images`` finds and rewrites the non-JPEG images; ``recipe`` runs
``prepare`` as a run of the usual shape.
"""
