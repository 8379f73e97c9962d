"""The Diverse Weather benchmark (single-domain generalised detection), VOC XML format.

Five domain folders (``daytime_clear``, ``Night-Sunny``, ``dusk_rainy``, ``night_rainy``,
``daytime_foggy``), each ``<domain>/VOC2007/{JPEGImages,Annotations,ImageSets/Main}``.
Seven classes in this order: bus, bike, car, motor, person, rider, truck. The original
release patched mmdet's own ``VOCDataset`` class list; this is a separate class on top of
mmdet's VOC/XML machinery, registered in mmdet's ``DATASETS``.
"""
import os.path as osp

from mmdet.datasets import VOCDataset

from soma.registry import DET_DATASETS

DIVERSE_WEATHER_CLASSES = ('bus', 'bike', 'car', 'motor', 'person', 'rider', 'truck')
DIVERSE_WEATHER_DOMAINS = ('daytime_clear', 'Night-Sunny', 'dusk_rainy', 'night_rainy',
                           'daytime_foggy')


@DET_DATASETS.register_module()
class DiverseWeatherDataset(VOCDataset):
    """One domain of Diverse Weather (mmdet ``VOCDataset`` with the 7 classes).

    Example::

        dict(type='DiverseWeatherDataset', data_root='data/diverseWeather/dusk_rainy',
             ann_file='VOC2007/ImageSets/Main/train.txt',
             data_prefix=dict(sub_data_root='VOC2007/'), test_mode=True, pipeline=[...])
    """

    METAINFO = dict(
        classes=DIVERSE_WEATHER_CLASSES,
        palette=[(0, 60, 100), (119, 11, 32), (0, 0, 142), (0, 0, 230), (220, 20, 60),
                 (255, 0, 0), (0, 0, 70)])

    def load_data_list(self):
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'Diverse Weather split file not found: {self.ann_file}')
        return super().load_data_list()


__all__ = ['DiverseWeatherDataset', 'DIVERSE_WEATHER_CLASSES', 'DIVERSE_WEATHER_DOMAINS']
