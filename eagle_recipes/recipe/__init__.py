"""The recipe language: TOML loading, JSON Schema validation, defaults and a typed view."""

from eagle_recipes.recipe.errors import Problem, RecipeError
from eagle_recipes.recipe.loader import load_recipe, validate_file
from eagle_recipes.recipe.view import Recipe

__all__ = ["Problem", "Recipe", "RecipeError", "load_recipe", "validate_file"]
