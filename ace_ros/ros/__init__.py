"""ROS 2 side of ace_ros: the nodes and their glue (the only code importing rclpy / *_msgs).

Modules: `conversions` (messages <-> numpy), `tf` (TF lookup and broadcast, with or without
tf2_ros), `params` (ROS parameters from the settings dataclasses), `diagnostics`
(/diagnostics), `localization_node`, `mapping_node`.
"""
