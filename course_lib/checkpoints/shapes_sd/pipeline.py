"""Lets `DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)`
find the pipeline class, which lives in course_lib (pip install the course library first)."""
from course_lib.diffusion.export import CourseTextToImagePipeline  # noqa: F401
