"""FaceNet branch, model level: embedding networks, triplet losses, P x K sampling and the
course's recognition functions (``img_to_encoding``, ``verify``, ``who_is_it``)."""
from models.facenet.losses import (TripletHardLoss, TripletSemiHardLoss, angular_distance,
                                   pairwise_distance, triplet_hard_loss, triplet_loss,
                                   triplet_semihard_loss)
from models.facenet.network import faceRecoModel, small_face_model
from models.facenet.recognition import has_preprocessing, img_to_encoding, verify, who_is_it
from models.facenet.sampler import PKSampler, pk_dataset

__all__ = [
    "faceRecoModel", "small_face_model",
    "triplet_loss", "TripletSemiHardLoss", "TripletHardLoss", "triplet_semihard_loss",
    "triplet_hard_loss", "pairwise_distance", "angular_distance",
    "PKSampler", "pk_dataset",
    "img_to_encoding", "verify", "who_is_it", "has_preprocessing",
]
