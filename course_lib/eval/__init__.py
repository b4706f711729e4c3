"""Every score the course gives a generator, in one package.

=================  ==========================================================================
file               what is inside
=================  ==========================================================================
``judges``         the digits and shapes judges (small classifiers shipped as safetensors;
                   ``shapes_calibrated`` and ``shapes_second`` can abstain, docs/judges.md),
                   ``SHAPES_JUDGE``: the one the course reads shapes with, and
                   ``extract_features``: images -> judge features
``distances``      FID, KID, the real-vs-real baseline, FID against the sample size
``accuracy``       did it draw what was asked: ``attribute_accuracy``, ``class_report``, and
                   the Inception Score
``coverage``       precision / recall and density / coverage
``shapes_eval``    ShapesEval, the course's GenEval: objects found by colour, judged one by one
``video``          video metrics of moving-shapes clips: per-frame objects, identity flicker,
                   direction and track R², clip Fréchet distance (not FVD), ``video_report``
``masks``          object masks and edges read back from generated images, mask IoU
``silhouette``     the silhouette judge: shape read from the object's outline (template fits,
                   radial profile), the judge closest to a person on hard images
``agreement``      how often a judge agrees with the eye-read set (tests/data/eye_read)
``sweeps``         the sampler comparison harness (``compare_samplers``), guidance sweeps
``speed``          training speed of the course U-Net against `diffusers`' UNet2DModel
=================  ==========================================================================

All images are (N, C, H, W) in [0, 1] and clips (N, T, 3, H, W); a ``judge`` argument is
``"digits"``, ``"shapes"`` or a judge module. The names below can be imported from
``course_lib.eval`` directly; ``sweeps`` and ``speed`` are imported by file (they run models).
"""
from course_lib.eval.accuracy import (attribute_accuracy, class_probabilities, class_report, inception_score,
                                      inception_score_from_probs, kl_to_marginal)
from course_lib.eval.coverage import knn_radii, precision_recall
from course_lib.eval.distances import (feature_stats, fid, fid_from_features, fid_vs_sample_size, frechet_distance, kid,
                                       kid_from_features, real_vs_real_baseline)
from course_lib.eval.judges import SHAPES_JUDGE, extract_features, load_judge
from course_lib.eval.masks import edges_of, mask_iou, object_mask
from course_lib.eval.shapes_eval import shapes_eval, shapes_eval_verdicts
from course_lib.eval.video import (centroid_error, clip_features, clip_frechet_distance, frame_features,
                                   frame_objects, frame_similarity, identity_flicker, track_direction, track_r2,
                                   video_report, video_verdicts)

__all__ = ["SHAPES_JUDGE", "load_judge", "extract_features", "feature_stats", "frechet_distance", "fid_from_features",
           "kid_from_features", "fid", "kid", "real_vs_real_baseline", "fid_vs_sample_size",
           "attribute_accuracy", "class_report", "class_probabilities", "kl_to_marginal",
           "inception_score_from_probs", "inception_score", "knn_radii", "precision_recall",
           "shapes_eval", "shapes_eval_verdicts", "object_mask", "edges_of", "mask_iou",
           "frame_objects", "identity_flicker", "track_direction", "track_r2", "centroid_error",
           "frame_features", "frame_similarity", "clip_features", "clip_frechet_distance", "video_verdicts",
           "video_report"]
