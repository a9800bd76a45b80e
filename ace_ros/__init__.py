"""ace_ros: ACE scene-coordinate relocalization for ROS 2."""

__version__ = '0.1.0'
