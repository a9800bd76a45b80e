"""ROS 2 side of ace_ros: the nodes and their glue (the only code importing rclpy / *_msgs).

Modules:
- the nodes: `mapping_node` (posed images -> keyframes -> a map file) and
  `localization_node` (images -> the robot's pose in the map frame), both on `node_base`
  (the logging bridge to /rosout, the image QoS, the `main()` runner);
- mapping_node's parts: `mapping_training` (the training thread, ~/finish to the map) and
  `mapping_diagnostics` (its /diagnostics status);
- localization_node's parts: `pose_output` (~/pose, covariance and TF), `controls` (mode,
  pause, trigger and the initialpose gate, ROS-free), `control_services` (their services)
  and `timing` (time jumps, the newest-image slot, counters; ROS-free);
- shared: `conversions` (messages <-> numpy), `tf` (TF lookup and broadcast, with or without
  tf2_ros), `params` (ROS parameters from the settings dataclasses), `diagnostics`
  (/diagnostics);
- `bag_player` (replays a bag over ROS 2 without rosbag2).
"""
