"""From the region head to scored detections: box conventions, decoding, VOC average precision,
evaluation of a model on a VOC tree, detection on one image and drawing. docs/SPECIFICATION.md, sections 12 and 13.
"""
