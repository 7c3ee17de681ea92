"""The demo course of tests/test_course.py: one assignment, the two-exercise notebook grading_demo.py,
with short limits so that a hanging submission costs seconds."""
c = get_config()  # noqa: F821

c.CourseDirectory.course_id = "wsss-lab-demo"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.Execute.timeout = 20
c.Execute.interrupt_on_timeout = True

ASSIGNMENTS = {"grading_demo": ["course/examples/grading_demo.py"]}
SUBMISSION_TIMEOUT = 240
