"""Train DeepLabV3+: python train.py [dataset=voc] [experiment=voc_os16] [key=value ...]."""

from deeplab.cli.train import main

if __name__ == "__main__":
    main()
