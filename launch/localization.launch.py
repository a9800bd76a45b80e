"""Localize a camera in a map: `ros2 launch ace_ros localization.launch.py map:=room.ace`.

Publishes ~/pose and ~/pose_with_covariance (of base_frame) and TF map -> odom (REP-105, as
AMCL; base_frame -> camera and odom -> base_frame come from TF: robot_state_publisher and
odometry). Without odom in TF: map -> base_frame, or no TF when that frame already has a
parent. A camera with no TF tree: base_frame:='' odom_frame:='' (map -> camera). For a bag:
`ros2 bag play --clock BAG` with use_sim_time:=true. rviz:=true also opens RViz on the package's
view (rviz/ace_ros.rviz: image, pose, TF, map cloud; rviz2 must be installed).
mode:=on_demand localizes only the first image after each ~/trigger call.
The node is a managed (lifecycle) node; autostart:=false starts it unconfigured, for
`ros2 lifecycle set /localization_node configure` (then activate) or nav2's lifecycle manager.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory('ace_ros'), 'config',
                                  'localization.yaml')
    rviz_config = os.path.join(get_package_share_directory('ace_ros'), 'rviz', 'ace_ros.rviz')
    arguments = [
        DeclareLaunchArgument('map', description='map file (.ace) written by mapping'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='localization_node parameters (ros__parameters '
                                          'YAML)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay with --clock)'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its topics'),
        DeclareLaunchArgument('device', default_value='auto',
                              description="'auto' (CUDA when present), 'cpu', 'cuda:N'"),
        DeclareLaunchArgument('base_frame', default_value='base_link',
                              description="robot body frame: ~/pose is its pose, base -> "
                                          "camera from TF; '' = the camera frame"),
        DeclareLaunchArgument('odom_frame', default_value='odom',
                              description="TF is map -> odom_frame; '' with base_frame '' = "
                                          'map -> camera (a camera with no TF tree)'),
        DeclareLaunchArgument('mode', default_value='continuous',
                              description="'continuous' (every image) or 'on_demand' (one "
                                          'image per ~/trigger call)'),
        DeclareLaunchArgument('image', default_value='image',
                              description='image topic (sensor_msgs/Image; its /compressed '
                                          'with image_transport:=compressed)'),
        DeclareLaunchArgument('image_transport', default_value='raw',
                              description="'raw' (Image) or 'compressed' (CompressedImage on "
                                          '<image>/compressed, jpeg/png)'),
        DeclareLaunchArgument('camera_info', default_value='camera_info',
                              description='camera_info topic'),
        DeclareLaunchArgument('pose', default_value='~/pose',
                              description='where the PoseStamped output goes'),
        DeclareLaunchArgument('pose_with_covariance', default_value='~/pose_with_covariance',
                              description='where the PoseWithCovarianceStamped output goes'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure and activate the (lifecycle) node at '
                                          "start; 'false': it waits unconfigured for "
                                          'lifecycle transitions'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='also start rviz2 with rviz/ace_ros.rviz (image, '
                                          'pose, TF, map cloud)'),
    ]
    node = Node(
        package='ace_ros',
        executable='localization_node',
        name='localization_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        # Later entries win: the launch arguments override the parameter file.
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                               value_type=bool),
                'map_path': ParameterValue(LaunchConfiguration('map'), value_type=str),
                'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
                'image_transport': ParameterValue(LaunchConfiguration('image_transport'),
                                                  value_type=str),
                'base_frame': ParameterValue(LaunchConfiguration('base_frame'),
                                             value_type=str),
                'odom_frame': ParameterValue(LaunchConfiguration('odom_frame'),
                                             value_type=str),
                'mode': ParameterValue(LaunchConfiguration('mode'), value_type=str),
                'autostart': ParameterValue(LaunchConfiguration('autostart'),
                                            value_type=bool),
            },
        ],
        remappings=[
            ('image', LaunchConfiguration('image')),
            ('camera_info', LaunchConfiguration('camera_info')),
            ('~/pose', LaunchConfiguration('pose')),
            ('~/pose_with_covariance', LaunchConfiguration('pose_with_covariance')),
        ],
    )
    # In the node's namespace, so the view's relative topic names find its topics; `image` as
    # the node's. It follows the node's default output names, not remapped pose outputs.
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        namespace=LaunchConfiguration('namespace'),
        arguments=['-d', rviz_config],
        parameters=[{'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)}],
        remappings=[('image', LaunchConfiguration('image'))],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='screen',
    )
    return LaunchDescription(arguments + [node, rviz])
