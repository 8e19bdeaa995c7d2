"""Recommendation candidates behind one protocol. Each module is a candidate family:

    NAME, REQUIRED_PARAMS           what it is called in recipes, the hyperparameters it needs
    fit(data, params, opts)         a TrainingSet -> a fitted Component, or None when the data cannot
                                    fit it (content without an item file)

and a fitted Component (nightrec.modeling.scoring.Component) scores a block of users over the
catalog and describes itself (kind, parameters, arrays) for the model artifact.
"""

from nightrec.modeling.candidates import als, content, itemknn, neighbours, popularity

FAMILIES = {module.NAME: module for module in (als, itemknn, neighbours, content, popularity)}
# component kind -> class, for loading model artifacts
COMPONENTS = {cls.kind: cls for cls in (als.AlsComponent, itemknn.ItemKnnComponent, neighbours.NeighboursComponent,
                                         content.ContentComponent, popularity.PopularityComponent)}
