"""ROS-free engine: torch / numpy / OpenCV only."""
