"""Datasets with data cards: the cards, getting the data (torchvision downloads or an existing copy), and writing
it as an ImageFolder that featkit extract reads (``featkit data list | show | prepare``).
"""
