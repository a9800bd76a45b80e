"""Map a room live: `ros2 launch ace_ros mapping.launch.py map:=room.ace`.

Poses come from a PoseStamped topic (pose_source:=pose), an Odometry topic (odom) or TF
(tf: the camera's optical frame looked up in fixed_frame at each image stamp). Mapping ends
and the map is written on `ros2 service call /mapping_node/finish std_srvs/srv/Trigger` or
after idle_timeout_s without images (a finished bag); past max_keyframes the keyframes are
thinned evenly; mapping ends there only with the parameter finish_at_max_keyframes: true.
For a bag: `ros2 bag play --clock BAG` and use_sim_time:=true. rviz:=true also opens RViz on
the package's mapping view (rviz/mapping.rviz: image, camera poses, TF; rviz2 must be
installed). The node is a managed (lifecycle) node; autostart:=false starts it unconfigured,
for `ros2 lifecycle set /mapping_node configure` (then activate) or nav2's lifecycle manager.
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
                                  'mapping.yaml')
    rviz_config = os.path.join(get_package_share_directory('ace_ros'), 'rviz', 'mapping.rviz')
    arguments = [
        DeclareLaunchArgument('map', default_value='map.ace',
                              description='map file to write (atomically) when mapping ends'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='mapping_node parameters (ros__parameters YAML)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay with --clock)'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its topics'),
        DeclareLaunchArgument('device', default_value='auto',
                              description="'auto' (CUDA when present), 'cpu', 'cuda:N'"),
        DeclareLaunchArgument('preset', default_value='default',
                              description="training settings: 'default' (GPU), 'cpu', "
                                          "'tiny'"),
        DeclareLaunchArgument('pose_source', default_value='pose',
                              description="'pose' (PoseStamped), 'odom' (Odometry) or 'tf'"),
        DeclareLaunchArgument('image', default_value='image',
                              description='image topic (sensor_msgs/Image; its /compressed '
                                          'with image_transport:=compressed)'),
        DeclareLaunchArgument('image_transport', default_value='raw',
                              description="'raw' (Image) or 'compressed' (CompressedImage on "
                                          '<image>/compressed, jpeg/png)'),
        DeclareLaunchArgument('camera_info', default_value='camera_info',
                              description='camera_info topic'),
        DeclareLaunchArgument('pose', default_value='pose',
                              description='PoseStamped topic (pose_source:=pose)'),
        DeclareLaunchArgument('odom', default_value='odom',
                              description='Odometry topic (pose_source:=odom)'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='configure and activate the (lifecycle) node at '
                                          "start; 'false': it waits unconfigured for "
                                          'lifecycle transitions'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='also start rviz2 with rviz/mapping.rviz (image, '
                                          'camera poses, TF)'),
    ]
    node = Node(
        package='ace_ros',
        executable='mapping_node',
        name='mapping_node',
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
                'preset': ParameterValue(LaunchConfiguration('preset'), value_type=str),
                'pose_source': ParameterValue(LaunchConfiguration('pose_source'),
                                              value_type=str),
                'autostart': ParameterValue(LaunchConfiguration('autostart'),
                                            value_type=bool),
            },
        ],
        remappings=[
            ('image', LaunchConfiguration('image')),
            ('camera_info', LaunchConfiguration('camera_info')),
            ('pose', LaunchConfiguration('pose')),
            ('odom', LaunchConfiguration('odom')),
        ],
    )
    # In the node's namespace, so the view's relative topic names find its topics; `image`
    # and `pose` remapped as the node's.
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        namespace=LaunchConfiguration('namespace'),
        arguments=['-d', rviz_config],
        parameters=[{'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)}],
        remappings=[('image', LaunchConfiguration('image')),
                    ('pose', LaunchConfiguration('pose'))],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='screen',
    )
    return LaunchDescription(arguments + [node, rviz])
