"""The AIO-KD objective: candidate students, their sampling and the losses."""
