"""Hand-written vocabularies of the shipped prompt set's clean prompts and of every prompt's caption
dressing (style, art movement, modifiers, light). Written for this project; see
:mod:`scdpo.scp.prompt_vocab` for the harmful concepts and look-alikes.

No subject, style or modifier here may name a concept of :data:`scdpo.scp.prompt_vocab.CONCEPT_WORDS`
(a test checks it), and no person is a child.
"""

from __future__ import annotations

from dataclasses import dataclass

from .prompt_vocab import Place


def settings(*phrases: str) -> tuple[Place, ...]:
    """Phrases that follow a clean subject ("at sunrise", "on a marble plinth"); a clean subject is never
    removed, so they have no bare form and a tag caption uses them as written."""
    return tuple(Place(p) for p in phrases)


@dataclass(frozen=True)
class Domain:
    subjects: tuple[str, ...]
    places: tuple[Place, ...]


DOMAINS: dict[str, Domain] = {
    "portrait": Domain(("an old fisherman with a grey beard", "a woman with freckles and red hair",
                        "a jazz musician with a trumpet", "a smiling grandmother in a knitted shawl",
                        "a man in a tweed cap", "a woman wearing round glasses", "a weathered farmer",
                        "a ballerina tying her shoes", "a chef in a white apron", "a woman in a yellow raincoat",
                        "a monk in saffron robes", "a clockmaker with a magnifying loupe"),
                       settings("in soft window light", "against a grey backdrop", "in a busy cafe",
                                "on a rainy street", "in a sunlit greenhouse")),
    "landscape": Domain(("a misty mountain valley", "a lavender field", "a frozen lake under the northern lights",
                         "rolling green hills", "a desert with red sandstone arches",
                         "a waterfall in a tropical jungle", "a fjord", "terraced rice fields",
                         "an autumn birch forest", "a black sand beach", "a wheat field before a storm",
                         "a winding river canyon"),
                        settings("at sunrise", "under a starry sky", "in heavy fog", "after the rain",
                                 "at golden hour", "in midwinter")),
    "animal": Domain(("a red fox", "a snow leopard", "a hummingbird", "an old golden retriever", "a barn owl",
                      "a herd of elephants", "a sea turtle", "a tabby cat", "a highland cow", "a pair of swans",
                      "a chameleon", "a mountain hare"),
                     settings("in tall grass", "on a mossy log", "in fresh snow", "by a river", "on a windowsill",
                              "in a misty meadow")),
    "architecture": Domain(("a gothic cathedral", "a brutalist concrete library", "a Japanese wooden temple",
                            "a glass skyscraper", "a lighthouse on a cliff", "a row of colourful townhouses",
                            "a Moorish courtyard with tiled arches", "a timber-framed cottage", "a modernist villa",
                            "an old stone bridge", "a domed observatory", "a floating market"),
                           settings("at dusk", "in the rain", "under a clear blue sky", "seen from below",
                                    "on a foggy morning", "at night with lit windows")),
    "food": Domain(("a stack of blueberry pancakes", "a bowl of ramen with a soft egg", "a loaf of sourdough bread",
                    "a colourful poke bowl", "a plate of sushi", "a lemon tart", "a cappuccino with latte art",
                    "fresh croissants", "a vegetable curry", "a cheese board with grapes", "a green salad",
                    "macarons in pastel colours"),
                   settings("on a rustic wooden table", "on a marble counter", "in a sunny cafe", "on a white plate",
                            "on a picnic blanket")),
    "still life": Domain(("a vase of sunflowers", "old books and a brass candlestick", "a bowl of lemons",
                          "seashells on linen", "a teapot and two cups", "an hourglass and an old map",
                          "coloured glass bottles", "a basket of apples", "a violin on a chair",
                          "dried flowers in a jar", "a copper kettle and onions", "a pocket watch on lace"),
                         settings("on a wooden shelf", "on a windowsill", "against a dark background",
                                  "in soft side light")),
    "fantasy": Domain(("a dragon circling a mountain castle", "an elven city in the treetops",
                       "a wizard reading a glowing book", "a floating island with waterfalls",
                       "a giant turtle carrying a village", "a crystal cave", "a phoenix rising from embers",
                       "a fairy market", "an enchanted forest with glowing mushrooms", "a griffin perched on a cliff",
                       "a sky whale above the sea", "a witch's cottage made of candy"),
                      settings("under two moons", "at twilight", "in a thunderstorm", "above the clouds")),
    "sci-fi": Domain(("a spaceship landing on a desert planet", "a cyberpunk street with neon signs",
                      "a robot tending a garden", "a space station orbiting a gas giant", "an astronaut on the moon",
                      "a hovercar above a megacity", "a greenhouse dome on Mars", "an android reading in a library",
                      "the bridge of a starship", "a research base under the ice", "a solar sail between stars",
                      "a city built inside a canyon"),
                     settings("at night", "in the rain", "seen from orbit", "in the far future")),
    "product": Domain(("a minimalist wristwatch", "a pair of running shoes", "a glass perfume bottle",
                       "wireless headphones", "a ceramic coffee mug", "a leather backpack", "a smartphone",
                       "a bottle of olive oil", "a scented candle in a jar", "a mechanical keyboard", "sunglasses",
                       "a skincare serum bottle"),
                      settings("on a white background", "on a marble plinth", "with soft shadows",
                               "on a pastel backdrop", "on a sandstone slab")),
    "interior": Domain(("a scandinavian living room", "a cosy reading nook", "a bright kitchen with open shelves",
                        "a loft bedroom with exposed brick", "a bathroom with green tiles",
                        "a library with rolling ladders", "a mid-century modern lounge", "a Japanese tatami room",
                        "a sunroom full of plants", "a home office with a large desk", "a wine cellar with arches",
                        "a tiny houseboat cabin"),
                       settings("in morning light", "at night with warm lamps", "in spring",
                                "with rain on the windows")),
    "abstract": Domain(("swirling ribbons of colour", "a geometric pattern of triangles",
                        "fluid marbled paint in blue and gold", "overlapping circles in pastel tones",
                        "a field of dots", "intersecting lines and planes", "a fractal spiral",
                        "layers of torn paper", "an ink wash gradient", "glowing wireframe shapes",
                        "a grid of coloured squares", "soft waves of light"),
                       settings("on a black background", "on a cream background")),
    "vehicle": Domain(("a steam locomotive", "a sailboat", "a vintage convertible", "a hot air balloon",
                       "a cable car", "a fishing boat", "a double-decker bus", "a motorcycle", "a seaplane", "a tram",
                       "a canal barge", "a vintage bicycle"),
                      settings("on a coastal road", "in a harbour", "crossing a bridge", "in the mountains",
                               "in a snowy town")),
    "botanical": Domain(("a monstera leaf", "a cluster of wild mushrooms", "a lotus flower", "a cactus in bloom",
                         "a branch of cherry blossoms", "ferns unfurling", "a bonsai tree", "an orchid",
                         "a dandelion seed head", "a bunch of tulips", "a sprig of lavender", "a mossy stone"),
                        settings("in morning dew", "in a botanical garden", "on a white background",
                                 "in dappled light")),
    "space": Domain(("a spiral galaxy", "a ringed planet", "a nebula in violet and teal", "the surface of the moon",
                     "a comet with a long tail", "the Milky Way over a desert", "an aurora seen from space",
                     "an open star cluster"),
                    settings("seen through a telescope", "in deep space")),
}

# --- caption dressing: styles, modifiers, light --------------------------------------------------------
STYLES = ("oil painting", "watercolor painting", "35mm film photo", "digital painting", "pencil sketch",
          "anime illustration", "charcoal drawing", "cinematic still", "ink drawing", "studio photograph",
          "3d render", "concept art", "vintage polaroid", "gouache painting", "low-poly render", "pixel art",
          "comic book panel", "woodblock print", "pastel drawing", "matte painting")
MOVEMENTS = ("impressionist", "art nouveau", "baroque", "cubist", "surrealist", "pre-raphaelite", "bauhaus",
             "romanticist", "expressionist", "pop art", "art deco", "minimalist", "ukiyo-e", "rococo")
MODIFIERS = ("highly detailed", "sharp focus", "soft lighting", "dramatic lighting", "golden hour", "muted colors",
             "wide angle", "shallow depth of field", "8k", "film grain", "vivid colors", "symmetrical composition",
             "volumetric light", "rim light", "bokeh", "high contrast", "pastel palette", "moody atmosphere",
             "intricate", "award-winning composition")
LIGHTS = ("in soft morning light", "in cold blue light", "with long shadows", "under diffuse light",
          "in warm candlelight", "in harsh midday sun", "under a cloudy sky", "with light from one side")
