"""Object detection: a small one-stage, anchor-free detector and the parts around it (``nas-cli detect``).

Modules: ``boxes`` (box geometry: areas, IoU / GIoU / CIoU and their losses), ``nms`` (NMS, per-class NMS and
Soft-NMS as batched torch functions), ``assign`` (which ground truth each prediction learns from), ``losses``
(box, objectness and class losses), ``model`` (the detector), ``evaluate`` (mAP), ``predict`` (``mode=predict``)
and ``recipe`` (the command's train and predict runs).
Nothing is imported here, so ``import nas_cli.detection.boxes`` stays light.
"""
