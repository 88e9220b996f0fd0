"""Detection-aware accuracy: decoding and NMS (detections), mAP and agreement (accuracy).
"""
