"""The reference tasks: synthetic AOI scenes, their image sets and the conveyor sequence.
"""
