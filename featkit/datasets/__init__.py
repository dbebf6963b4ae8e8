"""Datasets with data cards (``featkit data list | show | prepare``).

The cards, getting the data (torchvision downloads or an existing copy), and writing it as an ImageFolder that
featkit extract reads.
"""
