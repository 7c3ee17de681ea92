"""nbgrader configuration of the wsss-lab course, and its assignments (read by course/build.py:
`make assignments`, `make grade SUBMISSIONS=DIR`). Generated files go to the course root (runs/course)."""
c = get_config()  # noqa: F821 — provided by nbgrader (traitlets) when it loads this file

c.CourseDirectory.course_id = "wsss-lab"
# the stub a solution region becomes in the student release
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# per-cell limit while autograding (a lesson's training cell runs ~1-2 min on 2 CPU cores at the tutorial
# profile); a cell past it is interrupted, reported, and the notebook goes on
c.Execute.timeout = 600
c.Execute.interrupt_on_timeout = True

# assignment id → instructor notebooks (repo-relative; a jupytext .py or an .ipynb paired with one).
# One lesson per assignment; the release keeps each notebook's file name.
ASSIGNMENTS = {
    "00_weak_supervision": ["notebooks/00_weak_supervision.ipynb"],
    "01_class_activation_maps": ["notebooks/01_class_activation_maps.ipynb"],
    "02_affinitynet_random_walk": ["notebooks/02_affinitynet_random_walk.ipynb"],
    "03_edam": ["notebooks/03_edam.ipynb"],
    "04_box2seg": ["notebooks/04_box2seg.ipynb"],
    "05_eps_saliency": ["notebooks/05_eps_saliency.ipynb"],
    "06_segmentation_and_comparison": ["notebooks/06_segmentation_and_comparison.ipynb"],
}
# wall-clock limit of one submission's autograding (the whole lesson runs), seconds
SUBMISSION_TIMEOUT = 3600
