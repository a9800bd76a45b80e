"""ament_python package set-up: colcon on a ROS 2 distribution, or pip into a venv."""

from glob import glob

from setuptools import find_packages, setup

package_name = 'ace_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'benchmarks']),
    package_data={'ace_ros': ['weights/*.safetensors', 'weights/*.md']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/rviz', glob('rviz/*.rviz')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='ace_ros developers',
    maintainer_email='ace-ros@example.com',
    description='ACE scene-coordinate relocalization for ROS 2: map a room in minutes, '
                'localize a camera from a single image.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'ace-ros = ace_ros.cli:main',
            'localization_node = ace_ros.ros.localization_node:main',
            'mapping_node = ace_ros.ros.mapping_node:main',
        ],
    },
)
