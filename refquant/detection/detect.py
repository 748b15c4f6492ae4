"""``refquant detect IMAGE``: a detector's boxes, labelled, drawn into a PNG.

As Darknet's ``test_detector`` (examples/detector.c): the image is letterboxed into the
network input, the region head decoded with the drawing threshold 0.5 and NMS 0.45
(:func:`refquant.detection.decode.detections`), and the boxes drawn with their labels and scores
(:func:`refquant.detection.draw.draw_detections`).
"""
from refquant.detection.decode import DETECTION_THRESHOLD, NMS_THRESHOLD, detections, network_input
from refquant.detection.evaluate import check_names, region_head


def detect_image(net, image, names, thresh=DETECTION_THRESHOLD, nms=NMS_THRESHOLD, letterbox=True, image_id="image"):
    """Detections of ``net`` on one image (3, H, W) float in [0, 1]: dicts with label, score, box (VOC pixels)."""
    check_names(net, names, "detect")
    head = region_head(net)
    _, height, width = image.shape
    net_height, net_width = net.input_shape[1], net.input_shape[2]
    x = network_input(image, net_width, net_height, letterbox)[None]
    output = net.forward(x, training=False)
    return detections(output, head.anchors.ravel(), names, [image_id], [(width, height)], net_width, net_height,
                      thresh=thresh, nms=nms, letterbox=letterbox)
