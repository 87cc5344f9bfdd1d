"""Triplet loss, triplet miners (separate from the loss), softmax and centre losses."""

from facenet.losses.miners import (MINERS, OfflineBatch, active_fraction, get_miner, mine_offline,
                                   pairwise_sq_dists)
from facenet.losses.softmax import CentreLoss, FaceLoss, SoftmaxHead
from facenet.losses.triplet import TripletLoss, triplet_loss

__all__ = ["MINERS", "OfflineBatch", "active_fraction", "get_miner", "mine_offline",
           "pairwise_sq_dists", "CentreLoss", "FaceLoss", "SoftmaxHead", "TripletLoss", "triplet_loss"]
