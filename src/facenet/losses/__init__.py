"""Triplet loss, triplet miners (separate from the loss), softmax and centre losses."""

from facenet.losses.miners import MINERS, active_fraction, get_miner, pairwise_sq_dists
from facenet.losses.softmax import CentreLoss, FaceLoss, SoftmaxHead
from facenet.losses.triplet import TripletLoss, triplet_loss

__all__ = [
    "MINERS",
    "active_fraction",
    "get_miner",
    "pairwise_sq_dists",
    "CentreLoss",
    "FaceLoss",
    "SoftmaxHead",
    "TripletLoss",
    "triplet_loss",
]
